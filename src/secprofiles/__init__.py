"""secprofiles: seccomp and AppArmor profiles as Kubernetes resources."""
