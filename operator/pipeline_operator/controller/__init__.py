"""The top of the operator: the Kopf wiring and the composition root (:mod:`.wiring`: handlers, finalizer,
``run``, which builds the clients and starts the loops, the API and leader election), the watch of the
Pipelines every replica serves from (:mod:`.pipeline_cache`), the CRD generated from the models (:mod:`.crd`)
and the process's memory after a burst (:mod:`.memory`)."""
