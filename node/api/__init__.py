"""The node's HTTP API: the Open Inference Protocol (KServe v2 REST), routing to
any ready replica, the cluster view, events, admin calls, metrics and the
cluster page. `node.api.app` builds the app and serves it."""
