"""rsclip_core.data"""
