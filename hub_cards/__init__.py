"""Model card templates, shipped inside the package as `transformers_samclip.hub_cards`."""
