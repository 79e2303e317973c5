"""fastjl as the projector inside other attribution tools.

- :mod:`fastjl.integrations.trak`: ``FastJLProjector`` for TRAK's ``traker`` package
  (``TRAKer(..., projector=FastJLProjector(...))``).
- :mod:`fastjl.integrations.dattri`: ``FastJLProjector``, a drop-in ``random_project`` and a
  ``TRAKAttributor`` for dattri.

The host packages are not dependencies of fastjl: each module imports its host when it is
imported and raises an ``ImportError`` naming the package to install if it is missing.  This
package therefore imports neither module eagerly.
"""
