"""The node agent: converges one node's seccomp files and AppArmor profiles to the cluster's profiles.

Run as ``python -m secprofiles.agent --node-name NODE``; see ``agent.Agent`` for the loop.
"""

VERSION = "0.1.0"
