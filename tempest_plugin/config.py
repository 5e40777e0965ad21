"""Tempest options of the nova-dcmigrate plugin.

``[dcmigrate]`` configures the redirect API's service client (tempest's
plugin rules: ``catalog_type`` and ``endpoint_type`` are required; region,
build_timeout and build_interval are honoured by the client) and the
scenario tests; ``[dcmigrate_feature_enabled]`` says what the deployment
offers.  devstack/lib/dcmigrate (configure_tempest_for_dcmigrate) and the
lab cloud set them.
"""

from oslo_config import cfg

service_option = cfg.BoolOpt(
    "dcmigrate", default=False,
    help="Whether nova-dcmigrate's agents run on the compute hosts.")

dcmigrate_group = cfg.OptGroup(
    name="dcmigrate", title="nova-dcmigrate redirect API and tests")

DcmigrateGroup = [
    cfg.StrOpt("catalog_type", default="dcmigrate",
               help="Catalog type of the redirect API."),
    cfg.StrOpt("endpoint_type", default="publicURL",
               choices=["public", "admin", "internal", "publicURL",
                        "adminURL", "internalURL"],
               help="Endpoint type of the redirect API."),
    cfg.StrOpt("region", default="",
               help="Region of the redirect API (empty: [identity] "
                    "region)."),
    cfg.IntOpt("build_timeout", default=300,
               help="Seconds to wait for a redirect or migration to "
                    "finish."),
    cfg.IntOpt("build_interval", default=1,
               help="Seconds between status polls."),
    cfg.IntOpt("min_compute_nodes", default=3,
               help="Compute hosts the scenario tests need (source, first "
                    "destination, new destination)."),
    cfg.StrOpt("image_ref", default="",
               help="Image of the scenario tests' guest: it must keep "
                    "dirtying memory, so a live migration lasts long enough "
                    "to redirect it (empty: [compute] image_ref)."),
    cfg.StrOpt("flavor_ref", default="",
               help="Flavor of the scenario tests' guest (empty: [compute] "
                    "flavor_ref)."),
    cfg.IntOpt("migration_running_timeout", default=120,
               help="Seconds to wait for a live migration to report "
                    "'running' before it is redirected."),
]

feature_group = cfg.OptGroup(
    name="dcmigrate_feature_enabled",
    title="Features of the nova-dcmigrate deployment")

FeatureGroup = [
    cfg.BoolOpt("api", default=True,
                help="Whether the redirect REST API (dcmigrate-api) is "
                     "deployed and in the catalog."),
    cfg.BoolOpt("auto_redirect", default=False,
                help="Whether automatic redirects (triggers) are enabled, "
                     "e.g. when the destination's compute service is "
                     "disabled mid-flight."),
    cfg.BoolOpt("abort", default=True,
                help="Whether aborting a live migration during a redirect "
                     "is tested."),
]
