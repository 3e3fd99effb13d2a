"""The job spec: its strict schema (``schema``) and the one place a spec becomes components
(``components``). Imports no MXNet, OpenCV or Horovod, so a login node validates everything."""
