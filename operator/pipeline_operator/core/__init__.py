"""The pure core: the lifecycle state machines and the monitor emission rules.

Nothing here imports kopf, kubernetes, aiohttp or touches the file system or the clock:
every function takes what was observed, what is desired and what time it is, and returns
what to do. ``.importlinter`` states this as a contract.
"""
