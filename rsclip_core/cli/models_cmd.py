"""``rsclip models``: list the registered model configs."""

from __future__ import annotations

import json

import click


@click.command("models")
@click.argument("name", required=False)
@click.option("--params", is_flag=True, help="Build each model (random init) to count its parameters (slow).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with NAME: that model's full config).")
@click.option("--checkpoints", is_flag=True,
              help="List the public checkpoint entries (RemoteCLIP, GeoRSCLIP, SkyCLIP, MobileCLIP(2), OpenAI) "
                   "for open_clip:ARCH --entry NAME; see docs/checkpoints.md.")
def models(name: str | None, params: bool, as_json: bool, checkpoints: bool) -> None:
    """List registered model configs, or show the config of NAME (also open_clip:ARCH[@ENTRY])."""
    from rsclip_core.models import ModelConfigError, create_model, get_model_config, list_models

    if checkpoints:
        from rsclip_core.models.pretrained import ENTRIES

        if as_json:
            click.echo(json.dumps([e.to_dict() for e in ENTRIES.values()], indent=2))
            return
        for entry in ENTRIES.values():
            click.echo(f"{entry.name:22s} open_clip:{entry.arch:18s} {entry.file:45s} {entry.license}")
        return

    if name is not None:
        try:
            config = get_model_config(name)
        except (ModelConfigError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(json.dumps(config, indent=2))
        return
    rows = []
    for model_name in list_models():
        cfg = get_model_config(model_name)
        row = {
            "name": model_name,
            "image": f"{cfg['vision_cfg'].get('timm_model_name', cfg['vision_cfg'].get('type'))}@{cfg['vision_cfg']['image_size']}",
            "text": cfg["text_cfg"].get("type", "mct"),
            "embed_dim": cfg["embed_dim"],
            "tokenizer": cfg["tokenizer"]["kind"],
            "reparameterizable": bool(cfg["vision_cfg"].get("reparameterizable") or cfg["text_cfg"].get("reparameterizable")),
        }
        if params:
            try:
                row["params_m"] = round(create_model(model_name, pretrained_towers=False).num_params() / 1e6, 2)
            except FileNotFoundError:  # a local tower not installed / assembled (teacher-*-mpnet)
                row["params_m"] = None
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        extra = (f"  {row['params_m']:.2f}M" if row["params_m"] is not None else "  (tower missing)") if params else ""
        click.echo(
            f"{row['name']:28s} image={row['image']:28s} text={row['text']:12s} dim={row['embed_dim']:<4d} "
            f"tokenizer={row['tokenizer']}{' reparam' if row['reparameterizable'] else ''}{extra}"
        )
