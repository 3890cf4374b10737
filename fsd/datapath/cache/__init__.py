"""The local block cache: pure admission and eviction policy (`policy`), the
on-disk cache (`blockcache`, `directio`) and the read-ahead filler (`filler`)."""
