"""Clinical side of the MSK imaging CDS service: service declarations, findings, pathways, safety checks, cards
and the knowledge data they run on. Knows medicine and nothing about Flask or HTTP."""
