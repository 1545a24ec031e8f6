"""rsclip_core.export"""
