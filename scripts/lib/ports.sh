# Port helpers for the scripts that start their own centrals on free ports.
# Source this file; it defines functions only.

# port_in_use PORT: true when a TCP or UDP socket on this machine uses PORT.
port_in_use() {
	if command -v ss >/dev/null; then
		[[ -n $(ss -Htuan "( sport = :$1 )" 2>/dev/null) ]]
	else
		# Without ss only TCP can be checked: a connection that opens means a listener.
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# pick_port_bases sets HTTP_PORT_BASE, RAFT_PORT_BASE and GOSSIP_PORT_BASE
# to three blocks of three free ports (one port per central), chosen at
# random in 20000-29999. That range is below Linux's default ephemeral range
# (32768-60999), so outgoing connections do not take the ports meanwhile.
# It returns 1, with a message, when 100 attempts find no such blocks.
# NOTE: another program can still bind a port between this check and the
# centrals' start. The start then fails, and the calling script reports it.
pick_port_bases() {
	local reserved=() bases=() attempt base port free
	for attempt in $(seq 1 100); do
		base=$((20000 + RANDOM % 9998))
		free=1
		for port in "$base" $((base + 1)) $((base + 2)); do
			if [[ " ${reserved[*]} " == *" $port "* ]] || port_in_use "$port"; then
				free=0
				break
			fi
		done
		if ((free)); then
			bases+=("$base")
			reserved+=("$base" $((base + 1)) $((base + 2)))
			if ((${#bases[@]} == 3)); then
				HTTP_PORT_BASE=${bases[0]} RAFT_PORT_BASE=${bases[1]} GOSSIP_PORT_BASE=${bases[2]}
				return 0
			fi
		fi
	done
	echo "found no three blocks of three free ports in 20000-29999 after 100 attempts" >&2
	return 1
}
