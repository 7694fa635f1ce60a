"""One pipeline's monitoring loop: observe, decide (the pure core), record, then act (:mod:`.reconciler`);
what a Pipeline object asks for, as the loop and the HTTP API read it (:mod:`.spec`); where the loop's monitor
events go, the event store and Kubernetes Events (:mod:`.recording`)."""
