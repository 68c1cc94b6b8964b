# etcd FROM scratch, for the fleet stack (envoy/docker-compose.fleet.yaml): Debian's
# /usr/bin/etcd (package etcd-server), plus the glibc files it links, as `ldd` lists them.
# `make docker-fleet-images` assembles the build context (target/docker/etcd/rootfs) and
# builds callback-guard-etcd:<etcd version>; nothing here is downloaded.
FROM scratch
COPY rootfs/ /
# /var/lib/etcd comes in the build context owned by 65534 (mode 0700): a fresh named
# volume mounted there takes that owner, so etcd writes its data dir without root.
COPY --chown=65534:65534 data/ /var/lib/etcd/
USER 65534:65534
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/etcd"]
CMD ["--data-dir", "/var/lib/etcd/data"]
