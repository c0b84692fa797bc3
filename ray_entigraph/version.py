"""The package version, in a module of its own: modules that print it import it from here, never from the
package root (whose lazy API imports would otherwise close an import cycle through them)."""

__version__ = "0.1.0"
