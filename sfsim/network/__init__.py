"""The network: link rates over time, legs (which server and links a device has when), availability, mobility, backhaul."""
