"""The edge: live capture agent, pcap and NetFlow replay devices, synthetic traffic."""
