"""Helpers the tests share, one module per neighbour: ``service`` (images, poison corpus, topics, worker
processes, Kafka produce/collect), ``fakes`` (a fake model and handler), ``chaos`` (fleets and the outcome
ledger), ``hostile_http`` (a misbehaving HTTP server), ``deploy`` (Helm rendering, PromQL), ``pseudomask``
(small datasets and a stub detector). Tests import from here, never from another test module or conftest."""
