#!/usr/bin/env bash
# System packages the tests need: sshd for the network-namespace test cluster,
# iproute2 for the namespaces, rsync for ansible-test's copy of the collection.
set -euo pipefail
need=()
command -v /usr/sbin/sshd >/dev/null || need+=(openssh-server)
command -v ip >/dev/null || need+=(iproute2)
command -v rsync >/dev/null || need+=(rsync)
command -v javac >/dev/null || need+=(default-jdk-headless)
command -v g++ >/dev/null || need+=(g++)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
