#!/bin/sh
# One-shot (docker-compose.yml, profile "cluster"): makes the Valkey nodes in
# $NODES ("host:port host:port ...") one Redis Cluster of primaries, no replicas,
# and waits until it is ok. Idempotent: fresh nodes are joined with
# `valkey-cli --cluster create`; nodes that already form a cluster (their volumes
# kept) are met again from the first node, since their container IPs may have changed.
set -eu
CLI="${CLI:-valkey-cli}"
first="${NODES%% *}"
first_host="${first%:*}"
first_port="${first##*:}"

# CLUSTER MEET (and so --cluster create) takes IP addresses, not host names.
addrs=""
for node in $NODES; do
	ip="$(getent ahostsv4 "${node%:*}" | awk 'NR == 1 { print $1 }')"
	[ -n "$ip" ] || { echo "cannot resolve ${node%:*}" >&2; exit 1; }
	addrs="$addrs $ip:${node##*:}"
done
first_addr="${addrs# }"
first_addr="${first_addr%% *}"

info() { "$CLI" -h "$first_host" -p "$first_port" cluster info | tr -d '\r'; }

if info | grep -qx 'cluster_known_nodes:1'; then
	# shellcheck disable=SC2086 # one argument per node
	"$CLI" --cluster create $addrs --cluster-replicas 0 --cluster-yes
else
	for addr in $addrs; do
		[ "$addr" = "$first_addr" ] || "$CLI" -h "$first_host" -p "$first_port" cluster meet "${addr%:*}" "${addr##*:}" > /dev/null
	done
fi

tries=0
until info | grep -qx 'cluster_state:ok'; do
	tries=$((tries + 1))
	[ "$tries" -le 60 ] || { echo "the cluster is not ok after 60 s:" >&2; info >&2; exit 1; }
	sleep 1
done
echo "Redis Cluster ok:$addrs"
