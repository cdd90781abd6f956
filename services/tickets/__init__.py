"""The tickets service: support tickets, SLA clocks in business hours, routing, knowledge base."""
