"""Layer 4 of DESIGN.md section 5: the optional Wine smoke (``tools/wine_smoke``)."""
