"""rsclip_core.inference"""
