"""Tickets (工单): intake, status, assignment, SLA on business calendars."""
