"""The `ferry` command line, the one home of every command.

`main` is the entry point; `common` what every command shares (parser,
logging, progress bars, control-client plumbing); `errors` the two
exceptions that become exit codes; one module per area adds its commands:
`fs` (standalone volumes), `control` (the control service, cluster
volumes, snapshots, hosts, status), `state` (control state backup, restore,
recover), `backup` (volume export and import), `agent` (the per-host agent).

The product packages (fsd, agent, control) never import this package.
"""
