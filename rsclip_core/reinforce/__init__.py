"""rsclip_core.reinforce"""
