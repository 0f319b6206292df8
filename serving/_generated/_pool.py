"""The descriptor pool every generated module in this package registers into. DO NOT EDIT.

Private rather than protobuf's default pool, so that these ``inference.*`` messages can coexist in one process with
tritonclient's definitions of the same names. Health and reflection descriptors are added for server reflection.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
