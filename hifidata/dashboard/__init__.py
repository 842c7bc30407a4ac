"""The campaign dashboard: a local web page over one store or a folder of stores (read-only).

``hifidata dashboard PATH`` serves it (app.py); what it shows comes from
hifidata.datasets.overview; campaigns.py finds the stores and caches what was read.
"""
