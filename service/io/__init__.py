"""Kafka in and out: decoding records, the consumer and producer of each client, partitioning."""
