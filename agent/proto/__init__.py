"""Protobuf code generated from the .proto files here (see each file for how)."""
