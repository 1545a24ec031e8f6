"""rsclip_core.train"""
