"""Users' own domains on their containers: the C{custom_domains} table, its feed, and routing by Host and SNI."""
