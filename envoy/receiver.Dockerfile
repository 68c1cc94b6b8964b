# The recording receiver (src/bin/callback-receiver.rs) FROM scratch: one static musl
# binary. `make docker-images` builds it with
#   cargo build --release --target x86_64-unknown-linux-musl --bin callback-receiver
# and copies it into the build context (target/docker/receiver).
FROM scratch
COPY callback-receiver /callback-receiver
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/callback-receiver"]
CMD ["--listen", "0.0.0.0:8080"]
