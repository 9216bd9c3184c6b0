"""Federated training on NVFlare: the client script each site runs (:mod:`.client`), the job builder
(:mod:`.job`), the server's FedAvg controller (:mod:`.controller`) and site configs (:mod:`.sites`)."""
