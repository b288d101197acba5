"""`chatd bench`: drive a chatd server over loopback and report speed, memory and scale.

  probes.py   what /proc says: process state, children, CPU (schedstat), memory, fds, ports
  server.py   the server under test: spawn `chatd serve`, read its log, stop it
  load.py     the load generator: client connections, timing windows, percentiles
  report.py   the report's frame: header, memory, targets met or missed, the result
  cli.py      options and one run: `main(argv)`
  clients.py  scenarios burst, steady, idle, connect (many clients, messages, memory)
  churn.py    scenario churn (connect-and-reset from one address, seen by a bystander)
  history.py  scenario history (sessions reading history at their allowance, seen by a
              bystander)
  auth.py     `chatd bench auth` (the auth helper's logins; no server)
  irc.py      `chatd bench irc`: clients.py's scenarios over IRC, chatd's IRC port side by
              side with ngIRCd and InspIRCd (ircload.py: the IRC wire of the load
              generator; peers.py: those servers, started with configs of their own)

The test harness (tests/serverproc.py) and the soak (tests/soak.py) use probes.py and
server.py too: one /proc reader, one spawner.
"""
