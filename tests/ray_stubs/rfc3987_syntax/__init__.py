"""Stands in for rfc3987-syntax in the test cluster's Ray processes only (see the `ray_cluster`
fixture): importing it would fail, so jsonschema skips its IRI formats."""

raise ImportError("rfc3987_syntax is left out of the test cluster's Ray processes")
