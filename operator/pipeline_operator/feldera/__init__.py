"""What stands for or speaks to Feldera: the SQL compiler (:mod:`.compiler`), Feldera's launch contract
(:mod:`.launch`) and the pod's launcher that fetches a program binary (:mod:`.launcher`), the runtime's HTTP
client (:mod:`.runtime_client`, with the status polls' own client :mod:`.status_http`) and the reference
pipeline process that stands in for a Feldera pipeline (:mod:`.pipeline_process`)."""
