"""signalhub back office: the system of record (data model, domain rules, servicers, workers)."""
