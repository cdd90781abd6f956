"""The devices service: the fleet of each organisation, locations, stock and supply orders."""
