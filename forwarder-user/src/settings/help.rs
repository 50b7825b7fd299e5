//! The rule grammar and the configuration file's keys, for people: the
//! one text that `forwarder run --help`, `forwarder rule add --help` and
//! the man pages show.

/// The rule grammar (`--rule`, `forwarder rule add`).
pub const RULES: &str = "\
A rule maps public ports to one backend or several:

  PROTO:PORTS[@IFACE]=BACKEND[+BACKEND...][,OPTION...]

  PROTO     tcp or udp
  PORTS     PORT, or LOW-HIGH for a range
  @IFACE    only on this public interface (default: every --public one)
  BACKEND   ADDR[:PORTS][*WEIGHT]. Without PORTS the backend takes the
            public ports; a range as long as the public one maps each port
            to its counterpart; one port takes the whole public range.
            WEIGHT (default 1, at most 10000) is the backend's share of new
            connections; 0 takes none. Several backends are balanced by
            Maglev consistent hashing of the client's address and port.
  OPTION    no-masquerade       keep the client's address (default: the
                                gateway's own address towards the backend)
            src=CIDR            accept new connections only from CIDR
                                (repeatable; others are dropped, counted)
            health=tcp          check every backend by a TCP connect
            health=http:/PATH   check every backend by GET PATH (status 200)

Examples:

  tcp:8080=192.168.1.50:80
  udp:5353@eth0=10.0.0.2:53
  tcp:8000-9000=10.0.0.4:18000-19000
  tcp:22=10.0.0.7,src=203.0.113.5,src=198.51.100.0/24
  tcp:443=192.168.1.50+192.168.1.51*3,health=tcp

Every rule has a handle, given when it is added and never changed while it
exists: `forwarder rule list` shows it, `forwarder rule del HANDLE` removes
the rule, `--rule HANDLE` filters connections and backends by it.";

/// The configuration file (`--config`).
pub const CONFIG_FILE: &str = "\
--config FILE is TOML. Its interfaces and rules add to those given by flags;
a flag overrides the file's other settings. Every key, with its default:

  public = [\"eth0\"]              public interfaces: clients come in here
  internal = [\"eth1\"]            internal interfaces: backends are behind them
  mode = \"auto\"                  auto | xdp | tc: the hook on every interface
  snat_ports = \"10000-32767\"     masquerade source ports

  [modes]                        the hook of one interface: eth1 = \"tc\"

  [conntrack]
  max = 262144                   connections the table holds
  timeouts = { tcp_established = 432000 }
                                 seconds; also tcp_syn (120), tcp_syn_recv
                                 (60), tcp_fin (120), tcp_close (10),
                                 udp (30), udp_stream (180)
  new_conn_rate = 0              new connections per CPU and second (0: any)
  new_conn_burst = 0             new connections per CPU at once (0: a
                                 second's worth)

  [audit]
  rate = 1000                    audit events per CPU and second (0: none)
  burst = 2000                   audit events per CPU at once
  syslog = \"udp://10.0.0.5:514\"  also send them there (udp:// or tcp://)

  [[rule]]                       one table per rule
  proto = \"tcp\"
  port = 8080                    or \"8000-9000\"
  handle = 3                     optional: `forwarder save` writes it
  to = \"192.168.1.50:80\"         one backend, or several:
  backends = [{ to = \"192.168.1.50:80\", weight = 3 }, { to = \"192.168.1.51:80\" }]
  interface = \"eth0\"             optional
  masquerade = true
  sources = [\"203.0.113.0/24\"]   optional allow-list

  [rule.health]                  optional: the rule's backends are checked
  check = \"tcp\"                  tcp | http | exec
  path = \"/healthz\"              http: the path, and status = 200
  command = \"/usr/local/bin/check %a %p\"
                                 exec: %a and %p are the backend's address
                                 and port; exit 0 = up
  interval = 2                   seconds between checks of one backend
  timeout = 1                    seconds a check may take
  rise = 2                       successes in a row that bring it up
  fall = 3                       failures in a row that take it down
  on_down = \"keep\"               keep | reset: the TCP connections on a
                                 backend that goes down stay, or are reset";

/// What `forwarder run --help` shows after the flags.
pub fn run_help() -> String {
    format!("Rules:\n\n{RULES}\n\nConfiguration file:\n\n{CONFIG_FILE}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys the text names are the keys the file reads: an example
    /// with each of them parses.
    #[test]
    fn every_key_named_is_read() {
        let example = "public = [\"pub0\"]\ninternal = [\"int0\"]\nmode = \"auto\"\nsnat_ports = \"10000-32767\"\n[modes]\npub0 = \"tc\"\n[conntrack]\nmax = 262144\ntimeouts = { tcp_established = 432000, tcp_syn = 120, tcp_syn_recv = 60, tcp_fin = 120, tcp_close = 10, udp = 30, udp_stream = 180 }\nnew_conn_rate = 0\nnew_conn_burst = 0\n[audit]\nrate = 1000\nburst = 2000\nsyslog = \"udp://10.0.0.5:514\"\n[[rule]]\nproto = \"tcp\"\nport = 8080\nhandle = 3\nbackends = [{ to = \"192.168.1.50:80\", weight = 3 }, { to = \"192.168.1.51:80\" }]\ninterface = \"pub0\"\nmasquerade = true\nsources = [\"203.0.113.0/24\"]\n[rule.health]\ncheck = \"http\"\npath = \"/healthz\"\nstatus = 200\ninterval = 2\ntimeout = 1\nrise = 2\nfall = 3\non_down = \"keep\"\n";
        let mut s = super::super::Settings::default();
        s.merge_toml(std::path::Path::new("example.toml"), example).unwrap();
        // The defaults the text gives are the defaults.
        let d = super::super::Settings::default();
        assert_eq!(s.conntrack, d.conntrack);
        assert_eq!((s.audit.rate, s.audit.burst), (d.audit.rate, d.audit.burst));
        assert_eq!(s.snat_ports, d.snat_ports);
        for key in [
            "public",
            "internal",
            "mode",
            "snat_ports",
            "[modes]",
            "[conntrack]",
            "max",
            "timeouts",
            "new_conn_rate",
            "new_conn_burst",
            "[audit]",
            "rate",
            "burst",
            "syslog",
            "[[rule]]",
            "proto",
            "port",
            "handle",
            "to",
            "backends",
            "interface",
            "masquerade",
            "sources",
            "[rule.health]",
            "check",
            "path",
            "status",
            "command",
            "interval",
            "timeout",
            "rise",
            "fall",
            "on_down",
        ] {
            assert!(
                CONFIG_FILE.contains(&format!("{key} "))
                    || CONFIG_FILE.contains(&format!("{key}\n")),
                "{key}"
            );
        }
        for option in ["no-masquerade", "src=", "health=tcp", "health=http:/"] {
            assert!(RULES.contains(option), "{option}");
        }
    }
}
