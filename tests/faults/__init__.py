"""The fault suite: a seeded schedule of requests and faults run against a real local cluster.

`schedule` draws what happens (requests from several tenants, hostile inputs, client cancels,
worker kills and stalls) from a seed; `cluster` runs the processes and injects the faults;
`clients` sends the requests over gRPC and the OpenAI HTTP API; `invariants` judges the run;
`runner` ties them together for tests/integration/test_fault_suite.py and
benchmarks/fault_suite.py.
"""
