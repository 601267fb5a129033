"""The fault suite: a seeded schedule of requests and faults run against a real local cluster.

`schedule` (with `fault_plan` and `hostile`) draws what happens from a seed: requests from several
tenants, hostile inputs, client cancels, worker kills and stalls. `cluster` runs the processes and
`injector` plays the faults; `clients` sends the requests over gRPC, the OpenAI HTTP API and the
workers' own API; `reference` computes what the engine alone answers; `rejoin` checks that
restarted workers serve again; `invariants` judges the run; `runner` ties them together for
tests/integration/test_fault_suite.py and benchmarks/fault_suite.py.
"""
