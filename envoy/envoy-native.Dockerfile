# The Envoy image with callback-guard's native module (an Envoy dynamic module, Envoy >= 1.38),
# for envoy/docker-compose.native.yaml. `make docker-images NATIVE=1` builds it on top of the
# Envoy image that `make docker-images` picks (the official one, or callback-guard-envoy FROM
# scratch) and assembles the context (target/docker/envoy-native/rootfs): the module
# (target/native/libcallback_guard.so from `make native`) and the libraries it links (`ldd`)
# that the Envoy image lacks, at the paths ldd resolves (libgcc_s for unwinding, on the
# FROM-scratch image). Nothing here is downloaded.
ARG ENVOY_IMAGE
FROM ${ENVOY_IMAGE}
COPY rootfs/ /
# Envoy finds dynamic_module_config { name: callback_guard } here (libcallback_guard.so).
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/callback-guard
