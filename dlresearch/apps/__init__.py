"""Applications, one folder each; the engine never imports them."""
