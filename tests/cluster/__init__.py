"""An emulated Kubernetes cluster that runs what the operator renders.

kmock's emulator is the API server (also over TLS on a bridge address the pods reach), the real kopf
operator reconciles against it, and small controllers play the scheduler, the Deployment and
EndpointSlice controllers, the garbage collector and a kubelet that runs each container as a local
process in the pod's own network, mount, IPC and UTS namespaces. See `cluster.Cluster`.
"""
