"""The console: the device's own pages, for the person in front of it (docs/console.md).

:mod:`appliance.console.app` builds it; each page is a small view class in a
module of its own.
"""
