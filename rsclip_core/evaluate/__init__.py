"""rsclip_core.evaluate"""
