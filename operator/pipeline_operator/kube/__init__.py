"""The Kubernetes edge: the API client and its pools (:mod:`.client`), list+watch caches (:mod:`.informer`,
:mod:`.projection`), leader election (:mod:`.leader`), namespace claims (:mod:`.shards`) and Kubernetes Events
(:mod:`.events`, what a monitor event says to ``kubectl describe``; not to be confused with the monitor events
themselves)."""
