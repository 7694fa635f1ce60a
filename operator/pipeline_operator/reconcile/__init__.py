"""One pipeline's monitoring loop: observe, decide (the pure core), record, then act (:mod:`.reconciler`);
what every loop shares and the registry of loops (:mod:`.services`); the newest version of a Pipeline a loop
knows (:mod:`.versions`); monitor events to and from ``status.history`` (:mod:`.history`); what ``/metrics`` sees
of a loop (:mod:`.sampling`); what a Pipeline object asks for, as the loop and the HTTP API read it
(:mod:`.spec`); where the loop's monitor events go, the event store and Kubernetes Events (:mod:`.recording`)."""
