"""ferry agent: the per-host Docker volume plugin. It serves the plugin
protocol (`plugin`, `http`), keeps one record per volume (`volumes`, pure),
runs one fsd per mounted volume (`fsd_proc`) and holds leases from the
control service (`service`)."""
