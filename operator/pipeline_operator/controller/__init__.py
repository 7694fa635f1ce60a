"""The top of the operator: the composition root (:mod:`.wiring`: ``run``, which builds the clients
(:mod:`.clients`) and starts the loops, the API, leader election and the background tasks of
:mod:`.background`), Kopf's handlers (:mod:`.registry`) and the deletion they run (:mod:`.deletion`), the
workarounds in Kopf's private modules (:mod:`.kopf_workarounds`), the watch of the Pipelines every replica
serves from (:mod:`.pipeline_cache`), the CRD generated from the models (:mod:`.crd`) and the process's memory
after a burst (:mod:`.memory`)."""
